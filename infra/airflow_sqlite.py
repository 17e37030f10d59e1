"""Connection arguments for Airflow's SQLite metadata database.

Airflow's scheduler, DAG processor, triggerer, API server and task processes share one SQLite file,
and SQLite lets one connection write at a time. Python waits 5 s for that lock by default; on two
busy cores (a Spark job running beside the scheduler) a writer can hold it longer, and the API then
answers 500 "Database error" to a trigger. infra/airflow.sh points Airflow's
``sql_alchemy_connect_args`` options at these dicts to wait up to a minute instead.
"""

BUSY_TIMEOUT_SECONDS = 60

# Two dicts, not one: Airflow adds its own keys to the synchronous engine's arguments in place.
SYNC = {"timeout": BUSY_TIMEOUT_SECONDS}
ASYNC = {"timeout": BUSY_TIMEOUT_SECONDS}
