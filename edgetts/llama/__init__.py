"""Thin layers over llama.cpp that the policy builds on (no search or policy logic here)."""
