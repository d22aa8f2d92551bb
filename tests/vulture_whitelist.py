"""The names vulture cannot see used, for the dead-code gate (``vulture``, scripts/test.sh; its
paths and confidence: ``[tool.vulture]`` in pyproject.toml).

vulture reads worker/, api_client/, config/ and simulator/ alone, so a name counts as used only
when that code uses it. Listed here are names used another way: by name at run time (pydantic,
Jinja templates, enum members picked by a setting's text, hooks of a library), or by the tests
and the bench as part of what the package offers them. A name listed here is kept by its
spelling anywhere in the tree, so the list stays short and says why each one is here. Not
imported by anything (pytest collects ``test_*.py`` only); pydantic validators are ignored by
their decorators instead (``ignore_decorators``).
"""

from typing import Any

_: Any = None

# pydantic: the model's configuration, fields the CLI prints through model_dump(), settings
# read from the environment (THREADS_ACCESS_TOKEN_FILE, INSTAGRAM_ACCESS_TOKEN_FILE).
_.model_config
_.delete_quota_usage
_.delete_config
_.location_search_quota_usage
_.location_search_config
_.threads_access_token_file
_.instagram_access_token_file

# Enum members chosen by a setting's text (SECRET_FILE_MODE_CHECK=warn, LOG_FORMAT=text,
# WEBHOOK_SIGNATURE_SCHEME=both).
_.WARN
_.TEXT
_.BOTH

# Fields filled by name from the result hash (PollResult.from_redis), and read by Jinja
# templates (the console's chart, its pages, the search page).
_.runs
_.parent_generation
_.title
_.height
_.inflight_points
_.strip2_top
_.total_checks
_.total_ok
_.total_failed
_.axis_y
_.href
_.complete

# Protocols and overrides called by Python or a library: a module's lazy __getattr__,
# __aexit__'s arguments, redis-py's ConnectionPool.get_connection (overridden by the cluster's
# pipeline pool) and its argument, arq's job_serializer / job_deserializer hooks
# (worker.store.jobdata, for arq's own Job and enqueue_job).
_.__getattr__
_.exc_type
_.tb
_.get_connection
_.command_name
_.job_serializer
_.job_deserializer

# Offered to the tests and the bench: the simulator's admin and Instagram URLs and its
# inspection hooks, the Threads status fields (the bench's floor), a producer's ResultStore,
# the API's routes, tracing's in-memory install, trace ids, the tokens file's parser, a
# history's checks and its size bound, a webhook key's whsec form.
_.admin_url
_.instagram_url
_.STATUS_FIELDS
_.add_status_hook
_.remove_status_hook
_.refresh_calls
_.quota_calls
_.published_media_id
_.store_for
_.API_ROUTES
_.install
_.trace_id_of
_.TRACEPARENT_PATTERN
_.parse_tokens
_.entry_for
_.checks_of_last_poll
_.MAX_BYTES
_.whsec

# The Lua scripts' named arguments (worker/store/script_args.py): read by the scripts, from
# the JSON table to_json() builds out of the dataclass's fields, never by Python.
_.candidates
_.candidates_when_left
_.check_prefix
_.children_count
_.dead_letters_max_len
_.job_prefix
_.lock_prefix
_.max_deliveries
_.max_fields
_.parent_id
_.producer_accounts
_.producer_force
_.producer_publish
_.producer_webhook
_.stats_ttl_seconds
_.tries_prefix
_.waiting_parent
_.webhook_job_data
_.webhook_prefix
