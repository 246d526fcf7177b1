from astrolive.cli import main

main()
