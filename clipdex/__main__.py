from clipdex.cli import main

main()
