"""nerflow's Prefect flows, run settings and command line."""
