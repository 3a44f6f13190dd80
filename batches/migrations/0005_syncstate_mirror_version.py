from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('batches', '0004_webhooks'),
    ]

    operations = [
        migrations.AddField(
            model_name='syncstate',
            name='mirror_version',
            field=models.BigIntegerField(default=0),
        ),
    ]
