# Signature checks in batch, in one MicroPython process (tests/firmware/test_signature.py):
#
#     micropython verify_batch.py <module> <cases file>
#
# <module> has verify(public_key, message, signature) -> bool (loa.signature). Each line of the
# cases file is "<1 if valid, else 0> <key> <signature> <message>", each in hex
# (- if empty).
# Prints "wrong <line number>" for each case whose result differs, then "checked <n> wrong <m>".

import sys
from binascii import unhexlify


def _bytes(text):
    return b"" if text == "-" else unhexlify(text)


def main(module, path):
    verify = __import__(module, None, None, ["verify"]).verify
    checked = wrong = 0
    with open(path) as f:
        for line in f:
            want, key, signature, message = line.split()
            got = verify(_bytes(key), _bytes(message), _bytes(signature))
            if got is not (want == "1"):
                print("wrong", checked + 1)
                wrong += 1
            checked += 1
    print("checked", checked, "wrong", wrong)


main(sys.argv[1], sys.argv[2])
