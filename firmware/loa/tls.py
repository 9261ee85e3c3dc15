# TLS for the broker connection (and streams over https): an SSLContext checking the broker's
# certificate against its CA, or checking nothing. Loaded only to make a context and let go
# right after (Board.ssl_context in loa/hal): a receiver holds its code only while it connects.

import ssl


def context(ca_path, verify):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        with open(ca_path, "rb") as f:
            ca = f.read()
        ctx.load_verify_locations(cadata=pem_to_der(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pem_to_der(data):
    """The first certificate of a PEM file as DER (some mbedTLS builds parse only DER);
    DER input is returned as it is."""
    if not data.startswith(b"-----"):
        return data
    import binascii

    lines = data.split(b"\n")
    body = b""
    inside = False
    for line in lines:
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            inside = True
        elif line.startswith(b"-----END"):
            break
        elif inside:
            body += line
    return binascii.a2b_base64(body)
