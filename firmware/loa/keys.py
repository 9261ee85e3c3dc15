# The Ed25519 public keys a release's manifest must be signed with (docs/firmware-updates.md,
# "Keys and their rotation"): each the base64 of the key's 32 raw bytes, as printed by
# `loa firmware keygen`. Two while the signing key is being replaced. A receiver's config.json
# may name one more ("release_key": a bench's or the tests' own signing key).
#
# Loaded only for a signature check (loa/update.py) and let go after it.

TRUSTED = ()
