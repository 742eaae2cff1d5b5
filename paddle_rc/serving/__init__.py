"""An OpenAI-compatible HTTP server over a Predictor (tools/serve.py): protocol checks, a batching
scheduler, Prometheus metrics and a web page."""
