"""The HTTP edge: OpenAI-compatible API, authentication, and relaying replies from the bus."""
