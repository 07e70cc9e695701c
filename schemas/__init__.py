"""Pydantic models only: the OpenAI API surface, the bus envelope, the config file. No I/O."""
