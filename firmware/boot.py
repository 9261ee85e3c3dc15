# Runs first after every reset, before main.py. Kept minimal: anything here that fails
# would stop the board before the slot selection in main.py could fall back.

import gc

gc.collect()
# Collect early rather than let the heap fragment (TLS and JSON allocate in bursts).
gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
