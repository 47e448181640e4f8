import "cuckoo"
import "console"
rule MW_Import { meta: description = "d" source = "s" weight = 10 category = "miner" tier = "stable" scope = "file" condition: true }
