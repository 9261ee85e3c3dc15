# The heap one signature check needs, in MicroPython (tests/firmware/test_signature.py,
# bench/signature_verify.py):
#
#     micropython verify_heap.py <module> <check file>
#
# The check file holds a key's length (one byte), the key, a 64-byte signature and the message.
# Prints a JSON object: "ok" (the check's result with the whole heap), "module" (bytes the module
# keeps once imported), "need" (the free heap the check needs on top of the module and the
# message: the least that filler blocks may leave free, found by bisection to 64 bytes,
# for the check to succeed; null in a heap over 1 MiB; a check that runs out of memory is refused), "allocated" (bytes
# allocated by one check, the collector off; null if the heap is too small for that) and "kept"
# (bytes still reachable after it).

import gc
import json
import sys

FILLER = 1024
BISECT_UP_TO = 1 << 20


def main(module, path):
    with open(path, "rb") as f:
        data = f.read()
    key = data[1:1 + data[0]]
    signature = data[1 + data[0]:65 + data[0]]
    message = data[65 + data[0]:]
    del data
    gc.collect()
    before_import = gc.mem_alloc()
    verify = __import__(module, None, None, ["verify"]).verify
    gc.collect()
    module_bytes = gc.mem_alloc() - before_import
    before = gc.mem_alloc()
    ok = verify(key, message, signature)
    gc.collect()
    kept = gc.mem_alloc() - before
    gc.disable()
    start = gc.mem_alloc()
    try:
        allocated = gc.mem_alloc() - start if verify(key, message, signature) else None
    except MemoryError:
        allocated = None  # the heap is too small for one check without collections
    gc.enable()

    def fits(reserve):
        # Blocks of FILLER bytes, halved whenever none that large is left (the heap's holes
        # get filled too), until ``reserve`` bytes are left free.
        gc.collect()
        filler = None
        size = FILLER
        while size >= 16:
            if gc.mem_free() < reserve + size + 64:
                size //= 2
                continue
            try:
                filler = (filler, bytearray(size))
            except MemoryError:
                size //= 2
        try:
            return verify(key, message, signature) and filler is not None
        except MemoryError:  # the check ran out of heap (raised, not a refusal)
            return False

    gc.collect()
    low, high = 0, gc.mem_free()  # too little, enough
    if high > BISECT_UP_TO:
        high = None  # not looked for in a big heap (slow, and it says nothing more)
    while high is not None and high - low > 64:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    print(json.dumps({"ok": ok, "module": module_bytes, "need": high, "allocated": allocated, "kept": kept}))


main(sys.argv[1], sys.argv[2])
