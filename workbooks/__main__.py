from workbooks.cli.main import run

run()
