from ctjax.main import main

main()
