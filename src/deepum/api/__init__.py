"""What a user calls: sessions, the command line, the live status line."""
