"""
The relay: forwards connections from listening sockets to an X display.

Strictly private. Modules, each one concept, in the order they depend on each other:
``options`` (RelayOptions), ``stats`` (counters, RelayStats, and ``Shared``: what all
connections share), ``sockets`` (helpers), ``flows`` (the copying and splicing directions),
``passing`` (a copying flow that carries descriptors), ``shm`` (MIT-SHM granted as the X
server would), ``connection`` (one client's setup phase and flows), ``server`` (Relay:
accept loop and lifecycle), ``thread`` (RelayThread and its busy-poll selector).

Design, chosen by measuring variants with ``benchmarks/bench_relay.py`` (x11perf on a 2-core
virtual machine; times relative to a direct TCP connection to the X server):

- The flows use raw non-blocking sockets watched with ``loop.add_reader`` and
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
  copies. Measured again on Linux 6.18 (issue 19; x11perf in a container, the shared 2-core
  machine at load 10-12, two runs of 3-4 interleaved rounds): splicing the display's
  direction on the UNIX transport saved a little of the relay's CPU (0.85 instead of 0.90 and
  0.54 instead of 0.69 s/GB of GetImage) but its median GetImage time was worse in both runs
  (1.85x instead of 1.34x the bare socket, and 3.4x instead of 0.93x), and a 1 MiB send buffer
  on the client's socket cost more CPU (1.09 instead of 0.69 s/GB): neither was kept then.
  The send buffer, measured again on a quiet machine (``bench_apps.py``, 3 interleaved
  rounds, load about 1.5): GetImage 500 0.72x of the bare socket's rate instead of 0.45x
  (the floor relay: 0.63x) with the relay's CPU per operation down by a third, PutImage,
  glxgears and Qt unchanged within the noise; 4 MiB no better than 1 MiB. Kept: every UNIX
  socket of the relay, to clients and to the display, asks for 1 MiB. Once
  more with the application benchmark (``bench_apps.py``, 3 interleaved rounds, load 3-5):
  splicing the client's request bodies, the display's direction or both on the UNIX
  transport gave PutImage 500 0.54x, 0.48x, 0.46x of the bare socket's rate against 0.51x
  copying, GetImage 0.45x-0.59x against 0.52x, glxgears, Qt and Tk within the noise, and no
  less relay CPU per operation: not kept. ``perf record`` of the relay under PutImage shows
  why: copying is 3 % of its time; waking the peers and being woken (``sock_def_readable``,
  ``finish_task_switch``) about 40 %, the interpreter about 10 %. A relay of two threads that
  only ``recv_into`` and ``sendall`` (``benchmarks/_floor_relay.py``, the ``floor`` path of
  ``bench_apps.py``: x11perf in a container, two quiet runs of 3 interleaved rounds) moved
  PutImage 500 at 0.50-0.53x of the bare socket's rate, this relay at 0.53-0.55x: one more
  process in the path, not this relay's code, sets that floor.
  On a connection granted MIT-SHM both directions copy anyway, to carry descriptors.
- The client's direction passes the request filter, so it copies; but on TCP the body of a
  large request (64 KiB or more still to come once the filter has read its header: PutImage)
  is spliced (:class:`~.flows.BodySpliceFlow`). x11perf PutImage 500 in a container through
  ``transport="tcp"``, 5 interleaved rounds, load average 7: 0.53 instead of 0.66 s of the
  relay's CPU per GB, median 1.53 instead of 1.66 ms (2.04x instead of 2.20x the bare socket).
- Backpressure: a direction stops reading when its backlog reaches ``high_water`` and resumes
  when it drains to ``low_water``; the backlog never exceeds ``high_water``.
- A relay that owns its event loop (:class:`RelayThread`) can busy-poll for ``busy_poll``
  seconds after small exchanges before it sleeps (an X client waits for each reply, so the
  next event often arrives within 50 microseconds): on an idle machine a GetProperty round
  trip took 0.76x instead of 1.7x. It no longer does by default (issue 19): on the shared
  2-core machine (load average 10), x11perf in a container through the relay, 3 interleaved
  rounds, busy-polling doubled the relay's CPU per round trip (0.74 s instead of 0.39 s per
  10,000 GetProperty round trips) and the median GetProperty time was 0.51 ms with it,
  0.19 ms without: the polling thread takes the CPU the client and the X server need.
"""
