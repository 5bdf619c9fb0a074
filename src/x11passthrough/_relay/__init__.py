"""
The relay: forwards connections from listening sockets to an X display.

Strictly private. Modules, each one concept, in the order they depend on each other:
``options`` (RelayOptions), ``stats`` (counters, RelayStats, the shared DataPath),
``sockets`` (helpers), ``flows`` (the copy and splice data paths), ``connection`` (one
client's setup phase and flows), ``server`` (Relay: accept loop and lifecycle), ``thread``
(RelayThread and its busy-poll selector).

Design, chosen by measuring variants with ``benchmarks/bench_relay.py`` (x11perf on a 2-core
virtual machine; times relative to a direct TCP connection to the X server):

- The data path uses raw non-blocking sockets watched with ``loop.add_reader`` and
  ``loop.add_writer``, not transports or streams. A readable socket is read with one
  ``recv_into`` into a large buffer shared by the whole relay and written at once with
  ``send``; only the part the other side does not take is copied into a per-direction
  backlog, and only then is a writer registered. A round trip costs one callback per
  direction, and a bulk transfer no per-chunk copy while the receiver keeps up.
- Reads are large (1 MiB): one read then keeps draining the X server's UNIX socket while the
  server refills it. With 256 KiB reads GetImage took 1.5x, with 1 MiB 1.15x.
- On Linux, bytes that arrive on a TCP socket move with ``os.splice`` through a pipe instead,
  so they never enter user space (PutImage 0.9x instead of 1.5x). Splicing *from* a UNIX
  socket measured slower than copying (GetImage 1.9x instead of 1.3x), so that direction
  copies.
- Backpressure: a direction stops reading when its backlog reaches ``high_water`` and resumes
  when it drains to ``low_water``; the backlog never exceeds ``high_water``.
- A relay that owns its event loop (:class:`RelayThread`) busy-polls for 50 microseconds after
  small exchanges before it sleeps. An X client waits for each reply, so the next event
  usually arrives within that time and a sleep and a wake-up are saved: a GetProperty round
  trip took 0.76x instead of 1.7x. It does not poll after bulk reads, where the CPU is better
  left to the X server and the client.
"""
