def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs the workflow on a real single-node SLURM cluster started by tests/slurm/cluster.sh "
        "(root only; set FRPO_SLURM_TESTS=1)")
