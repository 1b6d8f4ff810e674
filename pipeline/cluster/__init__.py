"""Runs past one machine on Ray: one model actor per device slot of the cluster, driven by the
same scheduler, job store and writer as a local run (`RayWorkerPool` is a `WorkerPool`)."""
