"""djscale: scale an ordinary Django project from one server to many.

One topology file (``djscale.toml``) describes the cluster; :mod:`djscale.topology`
parses it, :mod:`djscale.settings` turns it into Django settings and
:mod:`djscale.cluster` boots it on one machine with the real services.
"""

__version__ = "0.1.0"
