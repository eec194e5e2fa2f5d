"""llmreel for test suites: the pytest plugin (`pytest --llmreel=offline`) and what it is made of.

`pytest_plugin` holds the hooks; `naming` turns node ids into namespaces, `calls` shows a test's
exchanges to the test, `tally` adds them up for the end-of-session summary, and `session` runs
one proxy in a background thread for the pytest process.
"""
