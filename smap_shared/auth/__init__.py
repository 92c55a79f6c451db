"""Who may do what: users, roles, API tokens and sessions (PostgreSQL), and the aiohttp middleware both APIs
use. `credentials` holds the pure parts (roles, hashing, token formats), `store` the database, `web` the
HTTP side, `python -m smap_shared.auth` the administrator's CLI. docs/security.md is the manual."""
