"""The serving runtime: requests, scheduler, paged KV blocks, model runner, sampling, CUDA
graphs, MTP speculation, and the LLM whose step is schedule -> run -> postprocess."""
