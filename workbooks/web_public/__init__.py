"""The public plane (anonymous, GET/HEAD, 127.0.0.1:4001): Host → workbook, pages from memory."""
