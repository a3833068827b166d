from celery import shared_task


@shared_task(name="devices.tasks.sweep")
def sweep() -> dict:
    from devices.sweep import run_sweep

    return run_sweep()
