"""arq jobs: everything that must not run inside a request. `astrolive.worker` registers them."""
