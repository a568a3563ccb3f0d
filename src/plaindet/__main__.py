from plaindet.cli import main

main()
