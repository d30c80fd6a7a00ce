pytest_plugins = ("tests.fix_clusters",)
