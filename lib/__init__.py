"""Shared logic of the Commander pipeline: documents, the intent bus, the decision engine, brokers."""
