{
  "targets": [
    {
      "target_name": "dst_native",
      "sources": ["native/dst_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
