"""Who is calling and what they may do: principals and grants (principal.py), the pure
authorisation policy (policy.py), signed bearer tokens (tokens.py), the watched
revocation list (revocations.py) and per-caller rate limits (ratelimit.py)."""
