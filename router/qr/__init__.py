"""Query/retrieve proxying: C-FIND, C-MOVE and C-GET answered by upstream PACS through the pipelines.

- :mod:`router.qr.models`: the information models, their levels and unique keys;
- :mod:`router.qr.upstream`: associations to an upstream ``dimse`` backend as a Q/R SCU;
- :mod:`router.qr.find`: the C-FIND proxy (several upstreams merged, streamed, cancellable);
- :mod:`router.qr.retrieve`: fetching instances from an upstream by C-GET or by C-MOVE to the router;
- :mod:`router.qr.move` and :mod:`router.qr.get`: the C-MOVE and C-GET SCP handlers;
- :mod:`router.qr.service`: what an endpoint offers and the entry points its handlers call.
"""
