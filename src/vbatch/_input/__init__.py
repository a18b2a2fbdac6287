"""The input side: stream rows from a file, turn each into a request, validate them all first."""
