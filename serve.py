"""After the loop: serve the qualified model behind an OpenAI-compatible API (vLLM or transformers serve).

python serve.py --model-id outputs/demo/round_1/model --port 8000     (see docs/serve.md)
"""
from llamaduo.cli import serve

if __name__ == "__main__":
    serve()
