"""Running vLLM: what a job needs of a model, the launch plan, the server process, the
embedded default model."""
