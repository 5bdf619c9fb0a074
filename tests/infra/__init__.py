"""
The tests' infrastructure: real X servers, engines, containers, namespaces, sshd.

Modules, one concern each: ``ci`` (the skip policy), ``processes``, ``xvfb``, ``network``,
``docker``, ``images``, ``sshd``, ``engines`` (Podman, rootless), ``distro`` (the app-matrix
image), ``relay_peers`` (servers for the relay tests) and ``fixtures`` (the pytest fixtures).
Everything talks only to this machine.
"""
