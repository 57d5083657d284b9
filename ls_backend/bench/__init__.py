"""``ls-backend bench``: a simulated annotator replays a labeled dataset through the server's own
models and ranking (``simulate``), and reports what active learning saves (``report``,
``curves``); ``data`` loads and embeds the dataset, ``cli`` holds the options and the command."""
