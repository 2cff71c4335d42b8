"""python -m cnnlab.report <dir>"""

from cnnlab.report import main

main()
