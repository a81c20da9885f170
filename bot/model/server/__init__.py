"""An OpenAI-compatible inference server (vLLM, llama.cpp's server, Ollama) behind ``LanguageModel``.

Selected by ``MOODMATE_INFERENCE_URL``; in that mode no local model is loaded and neither torch nor
transformers is imported. Nothing heavy is imported here: :mod:`bot.model.server.model` holds the
model, :mod:`bot.model.server.client` the HTTP client.
"""
