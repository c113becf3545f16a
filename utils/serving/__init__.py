"""serve.py's parts: ``app`` (the FastAPI app, its routes and errors), ``batcher`` (concurrent
requests batched into one network call, a bounded worker pool), ``limits`` (what is refused,
and how), ``render`` (apply.py's outputs as response bytes) and ``static/`` (the web page)."""
