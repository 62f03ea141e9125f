from lfads_jslds.cli import main

main()
