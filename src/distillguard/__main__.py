from distillguard.cli import main

main()
