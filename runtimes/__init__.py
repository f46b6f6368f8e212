"""What runs inside the boundary: the restricted executor, the wasi guest, the confined worker.

Nothing here imports the host side (`sandbox`): secrets, policy and capabilities stay out.
Every runtime reports its outcome in the wire format of `runtimes.wire`.
"""
