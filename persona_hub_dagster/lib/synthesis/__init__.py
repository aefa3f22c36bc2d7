"""Persona-driven synthesis: one task abstraction, a registry of tasks, one generator for all of them."""
