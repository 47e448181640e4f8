rule MW_Broken
{
    meta:
        description = "broken on purpose"
    condition:
        filesize > and true
}
