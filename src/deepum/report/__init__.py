"""Rendering what a session recorded: summaries, Chrome traces, plots."""
