"""dropbatch: drop OpenAI batch JSONL into S3, get vLLM results back in content-hashed prefixes."""

__version__ = "0.1.0"
