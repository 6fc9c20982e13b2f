"""quickdraft's drafting inside other serving engines.

- :mod:`quickdraft.integrations.vllm`: suffix drafting with quickdraft's cost-model controller as a
  vLLM ``custom_class`` speculative method (``pip install 'quickdraft[vllm]'``, see docs/vllm.md).

Nothing here is imported by ``import quickdraft``; each module imports its engine lazily.
"""
