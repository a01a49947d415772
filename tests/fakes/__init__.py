"""Fakes for tests without a GPU. Each is called a fake and is generated from, or checked against, the real API."""
