"""Every Redis command and Lua script: the job protocol (claim, release, settle), the result
hashes (the only writer of them), events, account state, key names, connections.

May import: ``worker.core``, ``config``, ``api_client`` (values), redis, arq's connection
settings. Not ``worker.ops``, ``worker.jobs``, ``worker.runtime`` or ``worker.client``.

Job data is ``jobdata``'s JSON, never arq's pickle; no other module encodes or decodes it.
"""
