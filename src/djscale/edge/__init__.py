"""The edge cache seen from the app: tag responses, purge them when data changes.

- :mod:`djscale.edge.tags`: ``Surrogate-Key`` tags on responses (``edge_tags``,
  ``add_tags``, ``model_tags``);
- :mod:`djscale.edge.purge`: purge backends (Varnish/xkey, Fastly, Cloudflare, CloudFront);
- :mod:`djscale.edge.invalidation`: ``register(Model)``: a committed save or delete
  evicts the tagged ``@cached`` entries (L2 and every L1) and purges the edge.

The edge itself (Varnish in the local cluster, its VCL) is tooling:
:mod:`djscale.cluster.varnish`. See docs/edge.md.
"""

from djscale.edge.invalidation import flush, invalidate, register
from djscale.edge.tags import TAG_HEADER, add_tags, edge_tags, model_tags, tag_token, tags_of

__all__ = ["TAG_HEADER", "add_tags", "edge_tags", "flush", "invalidate", "model_tags",
           "register", "tag_token", "tags_of"]
