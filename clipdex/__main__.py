from clipdex.cli import run

run()
